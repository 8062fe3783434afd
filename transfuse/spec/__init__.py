"""One spec layer: typed YAML file kinds, one validator, the init and fine-tuning names."""
