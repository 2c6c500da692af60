"""Training the deblurring/reblurring pair: ``python -m train.main``."""
