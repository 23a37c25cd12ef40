//! Models built from `pe-layers`: ResNets, DeiT/ViT and their PE variants.
