"""Inputs that need torch: factories (model, data, loss, device), Hugging Face models, and
checkpoints read safely (:mod:`.checkpoint_file` describes a checkpoint's layout once, without
torch), and the selection of checkpoints from files, folders and globs.
"""
