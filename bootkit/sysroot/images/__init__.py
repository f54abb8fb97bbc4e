"""Deploying OS images from OCI image layouts: each layer imported once into a record and
the content store, the layers merged by the OCI rules, the result built as a tree."""
