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

from slimship.commands import add_data_options, data_config, require
from slimship.compress.config import VocabConfig
from slimship.core.config import add_options, from_args


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="PyTorch artifact directory (from train, distill or prune)")
    parser.add_argument("--out", help="PyTorch artifact directory to write")
    add_options(parser, VocabConfig, title="vocabulary")
    add_data_options(parser)
    require(parser, "model", "data", "out")


def run(args) -> int:
    from slimship.compress.vocab import trim_vocab
    from slimship.core import artifact

    out = trim_vocab(args.model, args.out, data_config(args), from_args(args, VocabConfig))
    m = artifact.load(out)
    v, before, after = m["vocab"], m["before"], m["after"]
    line = (f"trimmed {out}: vocab {v['size_before']:,} -> {v['size_after']:,} tokens "
            f"({v['train_token_share_kept'] * 100:.2f}% of training tokens kept), "
            f"{before['file_size'] / 1e6:.1f} MB -> {after['file_size'] / 1e6:.1f} MB")
    if before["metrics"] and after["metrics"]:
        from slimship.core.metrics import main_metric_of, metric_label, shown

        line += (f"; {metric_label(main_metric_of(before['metrics']))} {shown(before['metrics'])} -> "
                 f"{shown(after['metrics'])}")
    print(line)
    return 0
