"""Keep only the vocabulary the training data uses: fewer word-embedding rows, a smaller model file.

A small student is mostly word-embedding table (MiniLM's is 30522 x 384), and most of those tokens never occur
in one domain. The token ids of the training texts are counted with the artifact's own tokenizer; ids seen at
least --min-count times are kept, together with the special tokens and every single character (plain and
"##" form), so any word still tokenizes without [UNK] by falling back to shorter pieces. Texts whose tokens
are all kept tokenize exactly as before and get the same predictions. --keep-top N also keeps the vocabulary's
first N pieces (in BERT-style vocabularies, the most frequent ones of the pretraining corpus), so general
words that the training split lacks keep their own embedding. The tokenizer (tokenizer.json,
vocab.txt) is rewritten to match, so export, quantize and serving work unchanged.

The artifact records the vocabulary and parameters before and after, the share of training tokens that kept
their own embedding, and the validation accuracy before and after. Only BERT-style WordPiece tokenizers
(bert, distilbert, electra, MiniLM, ...) are supported.

Examples:
  slimship trim-vocab --model runs/pruned --data examples/sentiment --out runs/pruned-vocab
  slimship trim-vocab --model runs/student --data ../shared/datasets/sst2 --out runs/student-vocab --min-count 2
  slimship trim-vocab --model runs/student --data ../shared/datasets/sst2 --out runs/student-vocab --keep-top 20000
"""

from slimship.commands import require


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="PyTorch artifact directory (from train, distill or prune)")
    parser.add_argument("--data", help="a directory with train/validation files, or one file to split: tokens are "
                                       "counted on the training rows, accuracy is measured on validation")
    parser.add_argument("--out", help="PyTorch artifact directory to write")
    parser.add_argument("--min-count", type=int, default=1,
                        help="keep tokens seen at least N times in the training texts (default: 1)")
    parser.add_argument("--keep-top", type=int, default=0, metavar="N",
                        help="also keep the vocabulary's first N ids: in BERT-style vocabularies (MiniLM too) the "
                        "pretraining corpus's most frequent pieces, so general words the training split lacks keep "
                        "their embedding (default: 0, only the training data's tokens)")
    parser.add_argument("--max-rows", type=int,
                        help="count a deterministic sample of N training rows (default: every row)")
    parser.add_argument("--max-eval-rows", type=int, help="measure accuracy on only the first N validation rows")
    parser.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    parser.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    parser.add_argument("--validation-fraction", type=float, default=0.1,
                        help="share of a single data file held out for validation (default: 0.1)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    require(parser, "model", "data", "out")


def run(args) -> int:
    from slimship.compress.vocab import VocabConfig, trim_vocab
    from slimship.core import artifact

    cfg = VocabConfig(data=args.data, min_count=args.min_count, max_rows=args.max_rows, keep_top=args.keep_top,
                      text_column=args.text_column, label_column=args.label_column,
                      validation_fraction=args.validation_fraction, seed=args.seed,
                      max_eval_rows=args.max_eval_rows, quiet=args.quiet)
    out = trim_vocab(args.model, args.out, cfg)
    m = artifact.load(out)
    v, before, after = m["vocab"], m["before"], m["after"]
    line = (f"trimmed {out}: vocab {v['size_before']:,} -> {v['size_after']:,} tokens "
            f"({v['train_token_share_kept'] * 100:.2f}% of training tokens kept), "
            f"{before['file_size'] / 1e6:.1f} MB -> {after['file_size'] / 1e6:.1f} MB")
    if before["metrics"] and after["metrics"]:
        line += (f"; accuracy {before['metrics']['accuracy'] * 100:.2f}% -> "
                 f"{after['metrics']['accuracy'] * 100:.2f}%")
    print(line)
    return 0
