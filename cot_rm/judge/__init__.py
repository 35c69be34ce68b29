"""The local judge (transformers) and the HTML critique."""
