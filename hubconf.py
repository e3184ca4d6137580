"""torch.hub entry points of the models this repository ships (pretrained/*/manifest.json):

    model = torch.hub.load(".", "tern_resnet20", source="local", pretrained=True)   # from a clone
    model = torch.hub.load("OWNER/REPO", "tern_resnet20", pretrained=True)         # from GitHub, once published

One entry point per shipped family (utils.pretrained.hub_entry_points): pretrained=True
loads a shipped file, offline, after checking its sha256; pretrained=False gives the
untrained architecture. Each entry point's docstring (torch.hub.help for a GitHub repository,
help(hubconf.tern_resnet20) in a clone) says which epochs and seeds are shipped.
"""
import utils.pretrained as _pretrained

dependencies = ["torch", "torchvision", "numpy", "PIL", "tqdm"]

globals().update(_pretrained.hub_entry_points())
