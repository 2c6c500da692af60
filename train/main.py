"""``python -m train.main``: training entry point (single process or under torchrun)."""

from reblur_deploy.cli.common import placeholder

main = placeholder("python -m train.main", "training")

if __name__ == "__main__":
    main()
