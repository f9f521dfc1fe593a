"""The YAML spec -> frozen dataclasses, every problem reported at once with its key path
(:func:`bscrit.specfile.document.load_spec`). Pure: no torch.
"""
