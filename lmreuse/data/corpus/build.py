"""Builds lmreuse's bundled pretraining corpus from the WordNet 3.0 database files.

    python -m lmreuse.data.corpus.build [--wordnet_dir=/usr/share/wordnet] \
        [--output=lmreuse/data/corpus/wordnet.jsonl.gz]

(`apt-get install wordnet-base` provides /usr/share/wordnet.) Takes ~5 s.

Each synset of data.{noun,verb,adj,adv} (format: wndb(5WN)) becomes one JSON line with
`id` (pos letter + 8-digit offset, e.g. "n02084071"; satellites are "s..."), `pos`,
`lexname`, `lemmas`, `gloss`, `examples`, `hypernyms` (ids of '@' and '@i' pointers) and
`split`. Lines are ordered by pos file (noun, verb, adj, adv), then offset; the gzip stream
has mtime=0, so the output is byte-identical across runs.

Held-out split rule (fixed, seeded): within each pos file, consecutive synsets of the same
lexicographer file are cut into blocks of BLOCK_SIZE=8 (a block ends early where the
lexname changes). A block's split comes from
`sha256(f"{SPLIT_SALT}:{first id of the block}")`: its first 8 bytes as a big-endian
integer, mod 100, give bucket b; b < 5 -> "validation", 5 <= b < 10 -> "test", else
"train". Every synset in the block shares that split. Blocks, rather than single synsets,
are held out so that (a) near-duplicate neighbours (siblings listed together) do not leak
between train and held-out sets and (b) held-out synsets form whole 8-synset documents
(see wordnet.documents), as the training ones do.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator

SPLIT_SALT = "lmreuse-wordnet-split-v1"
BLOCK_SIZE = 8
POS_FILES = ("noun", "verb", "adj", "adv")  # Output order.

# lexnames(5WN): lex_filenum -> lexicographer file name. Hardcoded because the `lexnames`
# file is not shipped by every WordNet package.
LEXNAMES = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)
assert len(LEXNAMES) == 45

_ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")  # Syntactic markers on adjective lemmas.
_QUOTED = re.compile(r'"([^"]*)"')
_HYPERNYM_SYMBOLS = ("@", "@i")


def split_of(block_id: str) -> str:
  """Held-out assignment of the block whose first synset is `block_id` (see docstring)."""
  digest = hashlib.sha256(f"{SPLIT_SALT}:{block_id}".encode()).digest()
  bucket = int.from_bytes(digest[:8], "big") % 100
  return "validation" if bucket < 5 else "test" if bucket < 10 else "train"


def split_gloss(gloss: str) -> tuple[str, list[str]]:
  """Separates a WordNet gloss into its definition and its quoted example sentences."""
  gloss = gloss.strip()
  # Examples follow '; "' (a few glosses use ': "'); quotes elsewhere are part of the definition.
  cuts = [c for c in (gloss.find('; "'), gloss.find(': "')) if c >= 0]
  cut = 0 if gloss.startswith('"') else min(cuts, default=-1)
  if cut < 0:
    return gloss.rstrip("; "), []
  definition = gloss[:cut].strip().rstrip(";:").strip()
  examples = [e.strip() for e in _QUOTED.findall(gloss[cut:]) if e.strip()]
  return definition, examples


def parse_line(line: str, path: str = "<data>") -> dict:
  """Parses one synset line of a data.* file (without `split`)."""
  head, sep, gloss = line.partition(" | ")
  if not sep:  # WordNet 3.0 has none, but a bare trailing "|" means an empty gloss.
    head, gloss = line.rstrip().removesuffix("|"), ""
  fields = head.split()
  try:
    offset, lex_filenum, ss_type = fields[0], int(fields[1]), fields[2]
    w_cnt = int(fields[3], 16)
    words = fields[4 : 4 + 2 * w_cnt : 2]
    i = 4 + 2 * w_cnt
    p_cnt = int(fields[i])
    pointers = [fields[i + 1 + 4 * k : i + 5 + 4 * k] for k in range(p_cnt)]
  except (IndexError, ValueError) as e:
    raise ValueError(f"{path}: malformed synset line {line[:80]!r}: {e}") from e
  if (
      ss_type not in ("n", "v", "a", "s", "r")
      or not 0 <= lex_filenum < len(LEXNAMES)
      or len(words) != w_cnt
      or any(len(p) != 4 for p in pointers)
  ):
    raise ValueError(f"{path}: malformed synset line {line[:80]!r}")
  definition, examples = split_gloss(gloss)
  return {
      "id": f"{ss_type}{offset}",
      "pos": ss_type,
      "lexname": LEXNAMES[lex_filenum],
      "lemmas": [_ADJ_MARKER.sub("", w).replace("_", " ") for w in words],
      "gloss": definition,
      "examples": examples,
      "hypernyms": [f"{p[2]}{p[1]}" for p in pointers if p[0] in _HYPERNYM_SYMBOLS],
  }


def parse_data_file(path: str) -> list[dict]:
  """All synsets of one data.* file in offset order (license header lines skipped)."""
  with open(path, encoding="utf-8") as f:
    records = [parse_line(line, path) for line in f if line.strip() and not line.startswith("  ")]
  return sorted(records, key=lambda r: r["id"][1:])


def assign_splits(records: list[dict]) -> None:
  """Adds `split` to records of one pos file, in file order, by BLOCK_SIZE blocks."""
  block_id, block_len, prev_lexname = "", 0, None
  for record in records:
    if record["lexname"] != prev_lexname or block_len == BLOCK_SIZE:
      block_id, block_len, prev_lexname = record["id"], 0, record["lexname"]
    block_len += 1
    record["split"] = split_of(block_id)


def iter_wordnet(wordnet_dir: str) -> Iterator[dict]:
  """Every synset of the WordNet database in `wordnet_dir`, in corpus order."""
  for pos in POS_FILES:
    path = os.path.join(wordnet_dir, f"data.{pos}")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} missing: --wordnet_dir must hold WordNet 3.0 data.* files")
    records = parse_data_file(path)
    assign_splits(records)
    yield from records


def write_jsonl_gz(records: Iterator[dict], output: str) -> int:
  """Writes records as deterministic gzip'd JSON lines (mtime=0, level 9); returns count."""
  buf, count = io.BytesIO(), 0
  with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
    for record in records:
      gz.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
      count += 1
  tmp = f"{output}.tmp.{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(buf.getvalue())
  os.replace(tmp, output)
  return count


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--wordnet_dir", default="/usr/share/wordnet")
  default_output = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wordnet.jsonl.gz")
  parser.add_argument("--output", default=default_output)
  args = parser.parse_args(argv)
  count = write_jsonl_gz(iter_wordnet(args.wordnet_dir), args.output)
  print(f"wrote {count} synsets to {args.output} ({os.path.getsize(args.output)} bytes)")


if __name__ == "__main__":
  main()
