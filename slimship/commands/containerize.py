"""Build an OCI image of the service (CPU, or GPU with --gpu), print its tag, size and how to run it; optionally
save or push it.

The image comes from the Dockerfile that ships inside slimship (slimship/deploy/Dockerfile, Dockerfile.gpu):
python:3.11-slim, only the serving packages (no torch, no transformers), the bento with its model, a non-root
user, a HEALTHCHECK on /readyz, port 3000. The builder is Docker where an engine answers, else podman, else
buildah, used as the machine configures them: the image lands in the storage your own `podman images` (or
`docker images`) lists. With none of them working it stops and says what to install (docs/CONTAINERS.md).

--model DIR builds the bento first (as `slimship build` does); --bento TAG uses one from the BentoML store.
stdout: `image: TAG`, `size: BYTES (HUMAN)`, `run: COMMAND`, then `saved: FILE` and `pushed: DEST@DIGEST` when
asked.

Examples:
  slimship containerize --model runs/demo/model --tag slimship-demo:latest
  podman run --rm -p 3000:3000 slimship-demo:latest          # the `run:` line (docker run where Docker built it)
  slimship containerize --bento slimship:latest --save slimship-demo.oci.tar
  slimship containerize --model runs/demo/model --push registry.example.com/team/slimship-demo:1
"""

from slimship.core.errors import UserError


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="ONNX artifact directory: build its bento, then the image")
    source.add_argument("--bento", help="bento tag from the BentoML store (e.g. from `slimship build`)")
    parser.add_argument("--gpu", action="store_true",
                        help="build the GPU variant (onnxruntime-gpu, CUDA/cuDNN from pip wheels; deploy/Dockerfile.gpu)")
    parser.add_argument("--tag", help="image name[:tag] (default: slimship:<bento version>[-gpu])")
    parser.add_argument("--backend", choices=["auto", "docker", "podman", "buildah"], default="auto",
                        help="builder: auto = Docker if its engine answers, else podman, else buildah")
    parser.add_argument("--save", metavar="FILE", help="also write the image to FILE as an OCI archive")
    parser.add_argument("--push", metavar="REGISTRY/NAME:TAG",
                        help="also push the image there (loopback registries are spoken to over plain HTTP)")
    parser.add_argument("--context-dir", metavar="DIR",
                        help="keep the build context here (for a manual `docker build DIR`) instead of a temp dir")


def run(args) -> int:
    from slimship import containers

    if not args.model and not args.bento:
        raise UserError("give the model to ship: --model DIR (an ONNX artifact) or --bento TAG")
    if args.push:
        containers.check_destination(args.push)  # before minutes of building
    if args.model and args.gpu:
        from slimship.core import artifact

        containers.check_gpu_model(artifact.load(args.model, verify=False), args.model)
    builder = containers.detect(args.backend)    # no builder: say so before minutes of building the bento
    if args.model:
        from slimship.serve.store import build_bento

        bento_tag = build_bento(args.model)
    else:
        bento_tag = args.bento
    result = containers.containerize(bento=bento_tag, tag=args.tag, gpu=args.gpu, backend=args.backend,
                                     save_to=args.save, push_to=args.push, context_dir=args.context_dir,
                                     builder=builder)
    print(f"image: {result['tag']}")
    print(f"size: {result['size']} ({containers.human_size(result['size'])})")
    print(f"run: {result['run']}")
    if "saved" in result:
        print(f"saved: {result['saved']}")
    if "pushed" in result:
        print(f"pushed: {result['pushed']}")
    return 0
