"""The one exception type for mistakes a user can fix; the CLI prints it as one line and exits with status 2."""


class UserError(Exception):
    """A problem the user caused and can fix; the message names the problem and the fix."""
