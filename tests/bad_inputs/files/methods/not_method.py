"""A class that is not a pathunlearn Method: resolving it must be a one-line error."""


class Thing:
    name = "thing"
