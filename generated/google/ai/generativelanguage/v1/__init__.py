# Generated file. DO NOT EDIT. Regenerate with `make generate`.
