/**
 * How each bundled workflow is arranged for users: columns of node ids (left to right, top to bottom),
 * groups, and notes. The nodes and their values come from workflows/api/<name>.json; this file only
 * places them. A column entry is a node id, a note key, or {id, align: otherId} to start no higher than
 * another node, or {id, below: [ids]} to start under those nodes with room for a group title between;
 * `free: true` on an entry keeps its width out of the column's (a wide note over the next columns). An entry
 * may name nodes of later columns.
 * Optional: `noteSize` {key: [w, h]} (default 440×300), `sizes` {id: [w, h]} (at least what the node's
 * widgets need, and in place of export_workflows.mjs's MIN_SIZE),
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
/**
 * The portrait graph (nodes 1-11), compact enough to open readable in a 1600×1000 window: the checkpoint
 * top left beside the note (over columns 2-3), the face and prompt groups under them, and the generate
 * group top right, where `generate` (extra entries for columns 4 and 5) can add a group under it.
 */
const portraitColumns = (generate = [[], []]) => [
  [1, { id: 2, below: ["files"] }, 3],
  [{ id: "files", free: true }, { id: 4, align: 2 }, 5],
  [{ id: 6, align: 2 }, 7],
  [8, 9, ...generate[0]],
  [10, 11, ...generate[1]],
];
/** Two-person workflows: small pictures, so that both people, the scene and the sampler fit one window. */
const PEOPLE_SIZES = { 3: [210, 0], 4: [240, 190], 5: [170, 0], 6: [210, 0], 7: [240, 190], 8: [170, 0] };
/** The note's size over columns 2-3, by how long it is. */
const WIDE_NOTE = [750, 220];

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

const SDXL_NOTE = `## Face2Diffusion on SDXL: files to put in place
- \`ComfyUI/models/face2diffusion/\`: **msid.pt** from the official release (github.com/mapooon/Face2Diffusion)
  and an **SDXL F2D mapper** (\`.safetensors\`): none has been released yet; train one
  (docs/sdxl.md in the node pack) and choose it as *mapper_file*
- \`ComfyUI/models/insightface/models/buffalo_l/\`: the insightface **buffalo_l** pack
- \`ComfyUI/models/checkpoints/\`: any SDXL checkpoint (base 1.0 or a fine-tune)

Write **f l** in the prompt where the person goes; \`(f l:1.2)\` weights work. Save F2D Face also writes the
face as an embedding, usable as \`embedding:name\` in any SDXL prompt.`;

const SDXL_TRAINING_NOTE = `## Train an SDXL F2D mapper (CGDR at 1024², two text encoders)
No SDXL mapper has been released: this graph trains one from scratch (S* starts at the word
"person" in both SDXL text encoders). **Photos** go in \`ComfyUI/input/faces/\` as for SD1.x.

**Model files**
- \`models/checkpoints/\`: **sd_xl_base_1.0.safetensors** (an eps-prediction SDXL base; not the refiner)
- \`models/face2diffusion/\`: **msid.pt**, **mapping.pt** (only loaded; *start_from* "CLIP-L head of the
  f2d_model mapper" starts the SDXL mapper's CLIP-L head from it), **79999_iter.pth**, **epoch_20.pth**
- \`models/insightface/models/buffalo_l/\`

**Settings**: crops of 1024 (768 or 512 are cheaper), batch 8 in micro-batches of 2 (same update,
less memory: about 17 GB in bf16 at 1024² by the design's estimate); raise *micro_batch* on a bigger
GPU, turn on *gradient_checkpointing* only when micro-batch 1 does not fit. The VAE input refuses a
training set made with another model's VAE. The paper's 100K x 32 at 1024² is about 48 H100-hours (an
estimate). The result, \`models/face2diffusion/f2d_sdxl_mapper_trained.safetensors\`, is a *mapper_file*
of Load MSID Encoder; Encode Face then gives SDXL S*.

**Headless / several GPUs** (from the ComfyUI folder):
\`\`\`
torchrun --nproc_per_node 8 custom_nodes/comfyui-face2diffusion/cli/train_mapper.py \\
  --comfyui . --checkpoint models/checkpoints/sd_xl_base_1.0.safetensors \\
  --msid models/face2diffusion/msid.pt --from-scratch \\
  --insightface-root models/insightface --pack buffalo_l --folder input/faces \\
  --face-parser models/face2diffusion/79999_iter.pth \\
  --expression-model models/face2diffusion/epoch_20.pth \\
  --steps 100000 --batch-size 32 --micro-batch 4 --lr 1e-5 \\
  --run-dir runs/sdxl --out models/face2diffusion/f2d_sdxl_mapper.safetensors
\`\`\``;

export const LAYOUTS = {
  f2d_sdxl_portrait: {
    notes: { files: SDXL_NOTE },
    noteSize: { files: WIDE_NOTE },
    columns: portraitColumns(),
    groups: [FACE_GROUP, PROMPT_GROUP, { title: "Generate (Euler a, 30 steps, CFG 7, 1024×1024)", nodes: [8, 9, 10, 11] }],
  },
  f2d_portrait: {
    notes: { files: note() },
    noteSize: { files: WIDE_NOTE },
    columns: portraitColumns(),
    groups: [FACE_GROUP, PROMPT_GROUP, { title: GENERATE_TITLE, nodes: [8, 9, 10, 11] }],
  },
  f2d_prompt_batch: {
    notes: {
      files: note(`Two of the paper's prompts share one face; each has its own sampler (same seed), and the
images are saved together. For more prompts, copy an Apply F2D Tokens + KSampler pair and add a Batch latents.`),
    },
    noteSize: { files: [300, 420] },
    columns: [
      [1, { id: 2, align: 4 }, 3],
      ["files", 4, 5],
      [6, 7, 10],
      [15, 11, 12],
      [16, 19, 20],
    ],
    groups: [
      FACE_GROUP,
      { title: "Prompts with f l", nodes: [6, 7, 10] },
      { title: GENERATE_TITLE, nodes: [15, 11, 12, 16, 19, 20] },
    ],
  },
  f2d_expression: {
    notes: {
      files: note(`Expression Reference needs Deep3DFaceRecon's **epoch_20.pth**
(github.com/sicxu/Deep3DFaceRecon_pytorch) in \`ComfyUI/models/face2diffusion/\`. Its photo gives only the
expression; the identity comes from the face photo.`),
    },
    noteSize: { files: [750, 280] },
    columns: portraitColumns([[{ id: 12, below: [9, 11] }], [{ id: 13, below: [9, 11] }]]),
    groups: [
      FACE_GROUP,
      PROMPT_GROUP,
      { title: GENERATE_TITLE, nodes: [8, 9, 10, 11] },
      { title: "Expression from a second photo", nodes: [12, 13] },
    ],
  },
  f2d_inpaint_template: {
    notes: {
      files: note(`Template portrait (FaceChain-FACT style): load an **SD1.5 inpainting** checkpoint
(e.g. sd-v1-5-inpainting.ckpt), open the template in the MaskEditor (right-click the Load Image node) and
paint over the face. Only the masked area changes.`),
    },
    noteSize: { files: [750, 260] },
    columns: [
      [1, { id: 2, below: ["files"] }, 3],
      [{ id: "files", free: true }, { id: 4, align: 2 }, 5],
      [{ id: 6, align: 2 }, 7],
      [12, 13],
      [9, 10, 14, 11],
    ],
    groups: [
      FACE_GROUP,
      PROMPT_GROUP,
      { title: "Template + mask", nodes: [12, 13] },
      { title: "Inpaint the masked face", nodes: [9, 10, 14, 11] },
    ],
  },
  f2d_controlnet_pose: {
    notes: {
      files: note(`Pose: an OpenPose ControlNet (e.g. **control_v11p_sd15_openpose.pth** in
\`ComfyUI/models/controlnet/\`) and a pose skeleton image (made, for example, by an OpenPose/DWPose
preprocessor).`),
    },
    noteSize: { files: [750, 260] },
    columns: portraitColumns([[{ id: 13, below: [9, 11] }], [{ id: 12, below: [9, 11] }, 14]]),
    groups: [
      FACE_GROUP,
      PROMPT_GROUP,
      { title: GENERATE_TITLE, nodes: [8, 9, 10, 11] },
      { title: "Pose", nodes: [12, 13, 14] },
    ],
  },
  f2d_best_of_4: {
    notes: {
      files: note(`**Best of 4**: the sampler makes 4 images; Face Similarity scores each against the face
(ArcFace \`w600k_r50.onnx\` of buffalo_l, not the MSID encoder that made S*), and Best of N keeps the most
alike. For prompt fidelity too, add Load CLIP Scorer + CLIP Score (a CLIP folder in
\`models/clip_scoring/\`) and rank by *harmonic mean*, as the paper combines identity and text.`),
    },
    noteSize: { files: [650, 230] },
    sizes: { 11: [300, 280], 15: [300, 300] },
    columns: [
      [{ id: "files", free: true }, { id: 2, below: ["files"] }, 3],
      [{ id: 4, align: 2 }],
      [1, 6, 7],
      [8, 9, 10, 15],
      [12, 13, 14, 11],
    ],
    groups: [
      { title: "Face → S*", nodes: [2, 3, 4] },
      PROMPT_GROUP,
      { title: "Generate 4, save all", nodes: [8, 9, 10, 15] },
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
    noteSize: { files: [750, 360] },
    sizes: { 6: [460, 0] }, // room for its title
    columns: portraitColumns(),
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
    noteSize: { files: [260, 440] },
    sizes: {
      ...PEOPLE_SIZES,
      1: [250, 0],
      2: [250, 0],
      9: [220, 0],
      10: [250, 0],
      11: [280, 110],
      12: [280, 0],
      13: [280, 0],
      14: [260, 110],
      15: [260, 0],
      17: [260, 260],
    },
    columns: [
      [1, 2, "files"],
      [3, { id: 6, below: [3, 4, 5] }, { id: 9, below: [6, 7, 8] }],
      [{ id: 4, align: 3 }, { id: 7, align: 6 }, { id: 10, align: 9 }],
      [{ id: 5, align: 3 }, { id: 8, align: 6 }],
      [11, 12, 13],
      [14, 15, 16, 17],
    ],
    groups: [
      { title: "Person 1 (left)", nodes: [3, 4, 5] },
      { title: "Person 2 (right)", nodes: [6, 7, 8] },
      { title: "Image size, regions", nodes: [9, 10] },
      { title: "Scene and people", nodes: [11, 12, 13] },
      { title: "Generate (768×512)", nodes: [14, 15, 16, 17] },
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
    noteSize: { files: [240, 520] },
    sizes: {
      ...PEOPLE_SIZES,
      1: [240, 0],
      2: [240, 0],
      9: [230, 0],
      10: [230, 0],
      11: [230, 0],
      12: [230, 110],
      13: [230, 0],
      14: [230, 0],
      15: [240, 110],
      16: [240, 0],
      17: [240, 0],
      19: [230, 0],
      20: [240, 0],
    },
    columns: [
      [1, 2, "files"],
      [3, { id: 6, below: [3, 4, 5] }],
      [{ id: 4, align: 3 }, { id: 7, align: 6 }],
      [{ id: 5, align: 3 }, { id: 8, align: 6 }],
      [9, 10, 11, 20],
      [12, 13, 14],
      [15, 16, 17, 18, 19],
    ],
    groups: [
      { title: "Person 1 (leftmost face)", nodes: [3, 4, 5] },
      { title: "Person 2 (next face)", nodes: [6, 7, 8] },
      { title: "Template regions", nodes: [9, 10, 11] },
      { title: "Scene and people", nodes: [12, 13, 14] },
      { title: "Inpaint every face", nodes: [15, 16, 17, 18, 19] },
    ],
  },
  f2d_train_mapper: {
    notes: { files: TRAINING_NOTE },
    noteSize: { files: [1240, 380] },
    sizes: { 4: [340, 0], 5: [420, 150], 6: [380, 330], 7: [170, 0], 8: [420, 280] },
    seedControl: { 4: "fixed" }, // a resumed run must see the same batches
    columns: [
      [3, { id: 1, below: [3, 6] }, 2],
      [6, { id: "files", free: true, below: [4, 8] }],
      [4],
      [5, 7, 8],
    ],
    groups: [
      { title: "Your photos → training set", nodes: [3, 6] },
      { title: "Models", nodes: [1, 2] },
      { title: "Train (CGDR)", nodes: [4] },
      { title: "Save + loss", nodes: [5, 7, 8] },
    ],
  },
  f2d_train_sdxl_mapper: {
    notes: { files: SDXL_TRAINING_NOTE },
    noteSize: { files: [1240, 420] },
    sizes: { 4: [340, 0], 5: [420, 150], 6: [380, 330], 7: [170, 0], 8: [420, 280] },
    seedControl: { 4: "fixed" }, // a resumed run must see the same batches
    columns: [
      [3, { id: 1, below: [3, 6] }, 2],
      [6, { id: "files", free: true, below: [4, 8] }],
      [4],
      [5, 7, 8],
    ],
    groups: [
      { title: "Your photos → training set (1024² crops)", nodes: [3, 6] },
      { title: "Models (SDXL base)", nodes: [1, 2] },
      { title: "Train (CGDR, SDXL)", nodes: [4] },
      { title: "Save + loss", nodes: [5, 7, 8] },
    ],
  },
  f2d_freecure: {
    notes: {
      files: note(`**F2D FreeCure: hair, glasses and expression from the prompt** (FreeCure, NeurIPS 2025).
The sampler first draws the prompt with *woman* (the class noun) instead of **f l**: the foundation image,
which follows the text. The face parser (**79999_iter.pth** of face-parsing.PyTorch in
\`models/face2diffusion/\`) finds there the attributes the prompt names (hair, glasses, eyes, hat, earrings...);
then the person is drawn again, its self-attention also looking at those regions of the foundation image.
Expression words (*laughing*) get asymmetric prompt guidance (APG). The report lists what was found.

**Cost**: about 2x a KSampler in UNet work (2.75x with APG); the plain KSampler is only for the comparison.`),
    },
    noteSize: { files: [600, 390] },
    seedControl: { 6: "increment", 9: "increment" }, // the plain KSampler keeps FreeCure's seed run after run
    sizes: {
      5: [170, 0],
      6: [400, 0],
      7: [250, 150],
      8: [250, 0],
      10: [220, 0],
      11: [220, 0],
      12: [220, 0],
      13: [220, 200],
      18: [400, 150],
    },
    columns: [
      [1, { id: 2, below: ["files"] }, 3],
      [{ id: "files", free: true }, { id: 4, align: 2 }, 5],
      [{ id: 7, align: 2 }, 8],
      [6, 18],
      [9, 10, 11, 12, 13],
    ],
    groups: [
      FACE_GROUP,
      { title: "Negative prompt, size", nodes: [7, 8] },
      { title: "FreeCure", nodes: [6, 18] },
      { title: "Before | after", nodes: [9, 10, 11, 12, 13] },
    ],
  },
};
