/**
 * Face2Diffusion: where the identifier ("f l") occurs in a prompt, counted the way the server finds it.
 *
 * Pure functions, no ComfyUI imports: the server splices S* wherever the identifier's CLIP tokens occur,
 * after ComfyUI has removed its weight syntax, so "(f l:1.2)" and "f l's" count and "fl" or "elf l" don't.
 */

/** CLIP's pre-tokenizer: contractions, letter runs, single digits, runs of other symbols. */
const CLIP_WORDS = /'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+/gu;
/** ComfyUI's emphasis syntax: the ":1.2" before a closing parenthesis, and unescaped parentheses. */
const WEIGHT = /:\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)\s*(?=\))/g;
const PARENTHESIS = /(?<!\\)[()]/g;

export const DEFAULT_IDENTIFIER = "f l";

/** The words CLIP sees in `text`, lower-cased, with ComfyUI's "(word:1.2)" weights removed. */
export function promptWords(text) {
  const plain = String(text ?? "")
    .toLowerCase()
    .replace(WEIGHT, " ")
    .replace(PARENTHESIS, " ");
  return plain.match(CLIP_WORDS) ?? [];
}

/** How many times the identifier's words occur, in order and without overlap, in the prompt's words. */
export function countIdentifier(text, identifier = DEFAULT_IDENTIFIER) {
  const wanted = promptWords(identifier);
  if (wanted.length === 0) return 0;
  const words = promptWords(text);
  let count = 0;
  for (let i = 0; i + wanted.length <= words.length; ) {
    if (wanted.every((word, k) => words[i + k] === word)) {
      count += 1;
      i += wanted.length;
    } else {
      i += 1;
    }
  }
  return count;
}
