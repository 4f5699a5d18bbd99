"""Video data: manifests, decoding, transforms, datasets, converters and the embedded benchmark."""
