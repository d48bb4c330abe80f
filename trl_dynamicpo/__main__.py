"""`python -m trl_dynamicpo ...` is `trl-dynamicpo ...` (this form also works with `accelerate launch -m` and
`torchrun -m`)."""

from trl_dynamicpo.cli.main import main


if __name__ == "__main__":
    raise SystemExit(main())
