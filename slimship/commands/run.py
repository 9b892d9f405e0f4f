"""The whole chain in one command: train -> compress (budgeted) -> report -> bento (-> image).

Each stage writes its own artifact under --out; rerunning skips every stage whose inputs and config are
unchanged, so a crash or a late change never redoes training. Options can come from a YAML config with
sections per stage (see configs/demo.yaml):

  data: examples/sentiment        # top level: run options, and training options shared by every stage
  model: minilm
  max_length: 64
  train:    {epochs: 3}           # TrainConfig fields for the teacher
  compress: {grid: {layers: [3]}} # CompressConfig fields; grid: a mapping or a grid YAML file

Examples:
  slimship run --config configs/demo.yaml --out runs/demo
  slimship run --data my_data/ --model minilm --max-accuracy-drop 0.5 --image
"""

from slimship.commands import require


def add_arguments(parser) -> None:
    parser.add_argument("--data", help="labelled data (directory or file), as for train")
    parser.add_argument("--model", default="minilm", help="pretrained model to fine-tune (default: minilm)")
    parser.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    parser.add_argument("--max-accuracy-drop", type=float, default=1.0,
                        help="accuracy points the compressed model may lose against the teacher (default: 1.0)")
    parser.add_argument("--image", action="store_true", help="also build the container image")
    parser.add_argument("--image-tag", help="image name:tag (default: derived from the bento)")
    require(parser, "data")


def run_config(args):
    """RunConfig from the parsed options plus the YAML's stage sections (train:, compress:)."""
    from dataclasses import fields

    from slimship.core.config import load_yaml
    from slimship.pipeline import RunConfig
    from slimship.train.recipe import TrainConfig

    train, compress = {}, {}
    if args.config:
        config = load_yaml(args.config)
        train_fields = {f.name for f in fields(TrainConfig)}
        train = {k.replace("-", "_"): v for k, v in config.items() if k.replace("-", "_") in train_fields}
        train.update({k.replace("-", "_"): v for k, v in (config.get("train") or {}).items()})
        compress = {k.replace("-", "_"): v for k, v in (config.get("compress") or {}).items()}
    return RunConfig(data=args.data, model=args.model, out=args.out, max_accuracy_drop=args.max_accuracy_drop,
                     image=args.image, image_tag=args.image_tag, train=train, compress=compress)


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
