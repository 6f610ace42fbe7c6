"""Training: the GAN (one D step, one G step) and the distributed Trainer."""
