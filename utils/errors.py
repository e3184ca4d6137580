class UserError(Exception):
    """A problem with the user's input or files: main.py reports it as one line, no traceback."""
