"""The whole chain in one command: train -> compress (budgeted) -> report -> bento (-> image).

Each stage writes its own artifact under --out; rerunning skips every stage whose inputs and config are
unchanged, so a crash or a late change never redoes training. Options can come from a YAML config with
sections per stage (see configs/demo.yaml):

  data: examples/sentiment        # top level: options of every command that has them (data, training, ...)
  model: minilm
  max_length: 64
  train:    {epochs: 3}           # what `slimship train` takes: the teacher
  compress: {grid: {layers: [3]}} # what `slimship compress` takes; grid: a mapping or a grid YAML file

Examples:
  slimship run --config configs/demo.yaml --out runs/demo
  slimship run --data my_data/ --model minilm --max-accuracy-drop 0.5 --image
"""

from slimship.commands import add_data_options, require


def add_arguments(parser) -> None:
    from slimship.compress.config import CompressConfig
    from slimship.core.config import add_options
    from slimship.pipeline import RunConfig

    add_options(parser, RunConfig)
    add_options(parser, CompressConfig, only=("max_accuracy_drop", "unlabeled"))
    add_data_options(parser)
    require(parser, "data")


def run_config(args):
    """RunConfig: the train and compress stages get what `slimship train` / `slimship compress` would get from
    the same config file, with this command line's options over it."""
    from slimship.cli import command_args
    from slimship.commands.compress import compress_config
    from slimship.commands import data_config
    from slimship.core.config import from_args
    from slimship.pipeline import RunConfig
    from slimship.train.config import TrainConfig

    given = {dest: getattr(args, dest) for dest in args._given}
    train_args = command_args("train", args._file_values, {"model": args.model, **given})
    compress_args = command_args("compress", args._file_values, given)
    compress_args.config = args.config
    return from_args(args, RunConfig, data=data_config(train_args), train=from_args(train_args, TrainConfig),
                     compress_data=data_config(compress_args), compress=compress_config(compress_args))


def run(args) -> int:
    from slimship.pipeline import run_pipeline
    from slimship.core.report import load_report, render_text

    result = run_pipeline(run_config(args))
    print()
    print(render_text(load_report(result["compress"])))
    print()
    print(f"model:  {result['model']}")
    print(f"bento:  {result['bento']}")
    if "image" in result:
        print(f"image:  {result['image']['tag']}  ({result['image'].get('size_mb', '?')} MB)")
    print()
    print("Serve it:   slimship serve --model " + result["model"] + " --port 3000")
    print("Query it:   curl -s localhost:3000/classify -H 'content-type: application/json' "
          "-d '{\"texts\": [\"a wonderful film\"]}'")
    print("Score a file: slimship score --model " + result["model"] + " --input texts.csv --output scores.csv")
    return 0
