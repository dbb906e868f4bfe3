/**
 * How each bundled workflow is arranged for users: columns of node ids (left to right, top to bottom),
 * groups, and notes. The nodes and their values come from workflows/api/<name>.json; this file only
 * places them. A column entry is a node id, a note key, or {id, align: otherId} to start no higher than
 * another node, or {id, below: [ids]} to start under those nodes with room for a group title between.
 * Optional: `noteSize` {key: [w, h]} (default 440×300), `sizes` {id: [w, h]} (at least),
 * `seedControl` {id: "fixed" | "increment" | ...} (the frontend's "control after generate" of a seed).
 */

const FILES_NOTE = `## Face2Diffusion: files to put in place
- \`ComfyUI/models/face2diffusion/\`: **msid.pt** and **mapping.pt** from the official release
  (github.com/mapooon/Face2Diffusion)
- \`ComfyUI/models/insightface/models/buffalo_l/\`: the insightface **buffalo_l** pack
  (the one InstantID and PuLID use; antelopev2 works too)
- \`ComfyUI/models/checkpoints/\`: any SD1.5 checkpoint (S* is made for SD1.x)

Write **f l** in the prompt where the person goes; \`(f l:1.2)\` weights work.`;

const note = (extra = "") => (extra ? `${FILES_NOTE}\n\n${extra}` : FILES_NOTE);

const FACE_GROUP = { title: "Face → S*", nodes: [2, 3, 4, 5] };
const PROMPT_GROUP = { title: "Prompt with f l", nodes: [6, 7] };
const GENERATE_TITLE = "Generate (the paper: Euler a, 30 steps, CFG 7, 512×512)";

const TRAINING_NOTE = `## Train your own F2D mapper (CGDR, as in the paper)
**Photos** go in \`ComfyUI/input/faces/\`: directly in it, or one subfolder per person (needed for
*shuffle_identities*). Files that cannot be used are skipped and listed in the **Dataset report**.

**Model files**
- \`models/checkpoints/\`: the SD1.x checkpoint to train for (the paper: SD1.4; SD1.5 works)
- \`models/face2diffusion/\`: **msid.pt** (identity encoder) and **mapping.pt** (the official mapper,
  the starting point here) from the official release; **79999_iter.pth** (BiSeNet face parser from
  face-parsing.PyTorch: the face mask of the loss); **epoch_20.pth** (Deep3DFaceRecon: expression codes)
- \`models/insightface/models/buffalo_l/\`: the face detector and landmarks

**Settings**: the paper's lr 1e-5, CGDR loss and expression dropout 0.2; 2000 steps at batch 8 with
gradient checkpointing fit a 12 GB GPU. Queue again to go on: the state in
\`output/face2diffusion_training/f2d_mapper/\` resumes. The result,
\`models/face2diffusion/f2d_mapper_trained.safetensors\`, is a *mapper_file* of Load MSID Encoder.

**Headless**: this very workflow against a running server (from the pack's folder):
\`\`\`
python cli/run_workflow.py workflows/api/f2d_train_mapper.json \\
  --server http://127.0.0.1:8188 --set 4.steps=20000
\`\`\`
**The paper's full schedule** (from scratch, 100K steps, batch 32) without a server, on 4 GPUs,
from the ComfyUI folder:
\`\`\`
torchrun --nproc_per_node 4 custom_nodes/comfyui-face2diffusion/cli/train_mapper.py \\
  --comfyui . --checkpoint models/checkpoints/v1-5-pruned-emaonly.safetensors \\
  --msid models/face2diffusion/msid.pt --from-scratch \\
  --insightface-root models/insightface --pack buffalo_l --folder input/faces \\
  --face-parser models/face2diffusion/79999_iter.pth \\
  --expression-model models/face2diffusion/epoch_20.pth \\
  --steps 100000 --batch-size 32 --lr 1e-5 --gradient-checkpointing \\
  --run-dir runs/paper --out models/face2diffusion/f2d_mapper_paper.safetensors
\`\`\``;

export const LAYOUTS = {
  f2d_portrait: {
    notes: { files: note() },
    columns: [
      ["files", 1, 2, 3],
      [{ id: 4, align: 2 }, 5],
      [{ id: 6, align: 1 }, 7],
      [{ id: 8, align: 1 }, 9],
      [{ id: 10, align: 1 }, 11],
    ],
    groups: [FACE_GROUP, PROMPT_GROUP, { title: GENERATE_TITLE, nodes: [8, 9, 10, 11] }],
  },
  f2d_prompt_batch: {
    notes: {
      files: note(`Four of the paper's prompts share one face; each has its own sampler (same seed), and the four
images are saved together. For more prompts, copy an Apply F2D Tokens + KSampler pair and add a Batch latents.`),
    },
    columns: [
      ["files", 1, 2, 3],
      [{ id: 4, align: 2 }, 5],
      [{ id: 6, align: 1 }, 7, 8, 9, 10],
      [{ id: 15, align: 1 }, { id: 11, align: 6 }, { id: 12, align: 7 }, { id: 13, align: 8 }, { id: 14, align: 9 }],
      [{ id: 16, align: 1 }, 17, 18, 19, 20],
    ],
    groups: [
      FACE_GROUP,
      { title: "Prompts with f l", nodes: [6, 7, 8, 9, 10] },
      { title: GENERATE_TITLE, nodes: [11, 12, 13, 14, 15, 16, 17, 18, 19, 20] },
    ],
  },
  f2d_expression: {
    notes: {
      files: note(`Expression Reference needs Deep3DFaceRecon's **epoch_20.pth**
(github.com/sicxu/Deep3DFaceRecon_pytorch) in \`ComfyUI/models/face2diffusion/\`. Its photo gives only the
expression; the identity comes from the face photo.`),
    },
    columns: [
      ["files", 1, 2, 3, { id: 12, below: [3, 5] }],
      [{ id: 4, align: 2 }, 5, { id: 13, align: 12 }],
      [{ id: 6, align: 1 }, 7],
      [{ id: 8, align: 1 }, 9],
      [{ id: 10, align: 1 }, 11],
    ],
    groups: [
      FACE_GROUP,
      { title: "Expression from a second photo", nodes: [12, 13] },
      PROMPT_GROUP,
      { title: GENERATE_TITLE, nodes: [8, 9, 10, 11] },
    ],
  },
  f2d_inpaint_template: {
    notes: {
      files: note(`Template portrait (FaceChain-FACT style): load an **SD1.5 inpainting** checkpoint
(e.g. sd-v1-5-inpainting.ckpt), open the template in the MaskEditor (right-click the Load Image node) and
paint over the face. Only the masked area changes.`),
    },
    columns: [
      ["files", 1, 2, 3, { id: 12, below: [3, 5] }],
      [{ id: 4, align: 2 }, 5],
      [{ id: 6, align: 1 }, 7],
      [{ id: 13, align: 1 }, 9],
      [{ id: 10, align: 1 }, 14, 11],
    ],
    groups: [
      FACE_GROUP,
      { title: "Template + mask", nodes: [12] },
      PROMPT_GROUP,
      { title: "Inpaint the masked face", nodes: [13, 9, 10, 14, 11] },
    ],
  },
  f2d_controlnet_pose: {
    notes: {
      files: note(`Pose: an OpenPose ControlNet (e.g. **control_v11p_sd15_openpose.pth** in
\`ComfyUI/models/controlnet/\`) and a pose skeleton image (made, for example, by an OpenPose/DWPose
preprocessor).`),
    },
    columns: [
      ["files", 1, 2, 3, { id: 12, below: [3, 5, 7] }, 13],
      [{ id: 4, align: 2 }, 5],
      [{ id: 6, align: 1 }, 7, { id: 14, align: 12 }],
      [{ id: 8, align: 1 }, 9],
      [{ id: 10, align: 1 }, 11],
    ],
    groups: [
      FACE_GROUP,
      { title: "Pose", nodes: [12, 13, 14] },
      PROMPT_GROUP,
      { title: GENERATE_TITLE, nodes: [8, 9, 10, 11] },
    ],
  },
  f2d_best_of_4: {
    notes: {
      files: note(`**Best of 4**: the sampler makes 4 images; Face Similarity scores each against the face
(ArcFace \`w600k_r50.onnx\` of buffalo_l, not the MSID encoder that made S*), and Best of N keeps the most
alike. For prompt fidelity too, add Load CLIP Scorer + CLIP Score (a CLIP folder in
\`models/clip_scoring/\`) and rank by *harmonic mean*, as the paper combines identity and text.`),
    },
    sizes: { 13: [360, 420], 14: [340, 260] },
    columns: [
      ["files", 1, 2, 3],
      [{ id: 4, align: 2 }],
      [{ id: 6, align: 1 }, 7],
      [{ id: 8, align: 1 }, 9, 10],
      [{ id: 12, align: 1 }, 13],
      [{ id: 14, align: 1 }, 11],
    ],
    groups: [
      { title: "Face → S*", nodes: [2, 3, 4] },
      PROMPT_GROUP,
      { title: "Generate 4 (paper sampler)", nodes: [8, 9, 10] },
      { title: "Score and keep the best", nodes: [12, 13, 14, 11] },
    ],
  },
  f2d_identity_start: {
    notes: {
      files: note(`**identity_start** (on Apply F2D Tokens): for that fraction of sampling the prompt says
*person* (the class noun) where **f l** stands, and the face's S* from then on (FastComposer's delayed
subject conditioning). 0 = S* from the first step, exactly the plain workflow.

**When to raise it** (0.1-0.3): the face takes over the picture, so the pose, the scene, the clothes
or the style of the prompt don't come through, or the person looks pasted in. Early steps set the
layout; later steps the face. Higher values follow the text better and look less like the person; keep
it under about 0.4. Write *woman*, *man* or *child* as the class noun when it fits better.`),
    },
    columns: [
      ["files", 1, 2, 3],
      [{ id: 4, align: 2 }, 5],
      [{ id: 6, align: 1 }, 7],
      [{ id: 8, align: 1 }, 9],
      [{ id: 10, align: 1 }, 11],
    ],
    groups: [FACE_GROUP, PROMPT_GROUP, { title: GENERATE_TITLE, nodes: [8, 9, 10, 11] }],
  },
  f2d_two_people: {
    notes: {
      files: note(`**Two people, each in their own region.** The scene prompt (plain CLIPTextEncode) covers
the whole image; each **Add F2D Person** adds one person's prompt, with their own S* at **f l**, masked to
their region (core's ConditioningSetMask + Combine: no person's S* reaches another's conditioning).
Person 1 is the left half, person 2 the right (**F2D Region Layout**: halves, thirds or a 2x2 grid for up
to 4 people; *overlap* lets them stand close). Chain one more Add F2D Person per person, or give your own
MASKs at the image's size. Raise a person's *strength* if the scene washes them out.

**Cost**: every region is one more UNet evaluation per step (batched with the others), as with any
regional prompt; F2D adds nothing to sampling.`),
    },
    noteSize: { files: [480, 420] },
    columns: [
      ["files", 1, 2],
      [{ id: 3, align: 1 }, 6],
      [{ id: 4, align: 1 }, 5, { id: 7, align: 6 }, 8],
      [{ id: 11, align: 1 }, 9, 10, 12, 13, 14],
      [{ id: 15, align: 1 }, 16],
      [{ id: 17, align: 1 }],
    ],
    groups: [
      { title: "Person 1 (left)", nodes: [3, 4, 5] },
      { title: "Person 2 (right)", nodes: [6, 7, 8] },
      { title: "Scene, regions and people", nodes: [11, 9, 10, 12, 13, 14] },
      { title: GENERATE_TITLE.replace("512×512", "768×512"), nodes: [15, 16, 17] },
    ],
  },
  f2d_inpaint_two_people: {
    notes: {
      files: note(`**Multi-person template** (FaceChain-FACT style, with S*): load an **SD1.5 inpainting**
checkpoint (e.g. sd-v1-5-inpainting.ckpt). **F2D Face Masks** finds every face of the template and
numbers them left to right: person 1 goes into the leftmost face, person 2 into the next (set *person*
on each Add F2D Person). All faces are inpainted in one pass, each with its own person's S*; *grow*
widens each face's mask (hair, ears). The rest of the template is kept.`),
    },
    noteSize: { files: [480, 360] },
    columns: [
      ["files", 1, 2, 9],
      [{ id: 3, align: 1 }, 6],
      [{ id: 4, align: 1 }, 5, { id: 7, align: 6 }, 8],
      [{ id: 10, align: 1 }, 11, 12, 13, 14, 15],
      [{ id: 16, align: 1 }, 17],
      [{ id: 18, align: 1 }, 19, 20],
    ],
    groups: [
      { title: "Person 1 (leftmost face)", nodes: [3, 4, 5] },
      { title: "Person 2 (next face)", nodes: [6, 7, 8] },
      { title: "One region per face of the template", nodes: [10, 11, 12, 13, 14, 15] },
      { title: "Inpaint every face", nodes: [16, 17, 18, 19, 20] },
    ],
  },
  f2d_train_mapper: {
    notes: { files: TRAINING_NOTE },
    noteSize: { files: [560, 480] },
    sizes: { 4: [340, 0], 6: [380, 300], 8: [560, 330] },
    seedControl: { 4: "fixed" }, // a resumed run must see the same batches
    columns: [
      ["files"],
      [1, 2, 3, 6],
      [{ id: 4, align: 1 }],
      [{ id: 5, align: 1 }, 7, 8],
    ],
    groups: [
      { title: "Models", nodes: [1, 2] },
      { title: "Your photos → training set", nodes: [3, 6] },
      { title: "Train (CGDR)", nodes: [4] },
      { title: "Save + loss", nodes: [5, 7, 8] },
    ],
  },
};
