"""Videos in and out: decoding and sampling, the frame cache, the video writer."""
