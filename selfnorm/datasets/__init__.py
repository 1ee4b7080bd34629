"""The pieces behind :mod:`selfnorm.data`: the dataset registry (``registry``), downloads and the
cache (``download``), and file formats (``formats``). Use :func:`selfnorm.data.load_dataset`."""
