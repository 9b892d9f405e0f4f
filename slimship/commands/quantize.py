"""INT8-quantize an ONNX artifact: dynamic (weights int8, activations quantized at run time) or static (QDQ).

The integer types follow the instruction-set preset of this CPU (avx512_vnni, avx512, avx2 or arm64; override
with --preset), recorded in the manifest. Static quantization calibrates activation ranges on --calibration
training rows from --data (min-max, entropy or percentile) and needs an unfused export. With --data, accuracy
before and after and the share of agreeing predictions are measured on the validation split; sizes always.
--embedding-bits 4 stores the word-embedding table block-wise in 4 bits (the rest stays INT8): for a small
student that table is most of the file.

Examples:
  slimship quantize --model runs/teacher-onnx --out runs/teacher-int8 --mode dynamic --data examples/sentiment
  slimship quantize --model runs/teacher-onnx --out runs/teacher-qdq --mode static --data examples/sentiment \\
      --calibration 256 --method percentile --per-channel
  slimship quantize --model runs/student-onnx --out runs/student-int8-emb4 --embedding-bits 4 --data examples/sentiment
"""

from slimship.commands import add_data_options, optional_data_config, require
from slimship.compress.config import QuantizeConfig
from slimship.core.config import add_options, from_args


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="ONNX artifact directory (from export)")
    parser.add_argument("--out", help="quantized ONNX artifact directory to write")
    add_options(parser, QuantizeConfig, title="quantization")
    add_data_options(parser)   # training rows for calibration, validation rows for accuracy before/after
    require(parser, "model", "out")


def run(args) -> int:
    from slimship.compress.quantize import quantize
    from slimship.core import artifact
    from slimship.core.metrics import metric_label

    out = quantize(args.model, args.out, optional_data_config(args), from_args(args, QuantizeConfig))
    q = artifact.load(out)["quantization"]
    embeddings = ", word embeddings 4-bit" if q.get("embedding_bits") == 4 else ""
    line = (f"quantized {out}: {q['mode']} INT8 ({q['preset']}){embeddings}, {q['size_mb_before']:.1f} MB -> "
            f"{q['size_mb_after']:.1f} MB")
    if "metric_after" in q:
        line += (f"; {metric_label(q['metric'])} {q['metric_before'] * 100:.2f} -> {q['metric_after'] * 100:.2f}, "
                 f"{q['agreement'] * 100:.1f}% of predictions unchanged")
    print(line)
    return 0
