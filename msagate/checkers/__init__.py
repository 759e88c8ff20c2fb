"""
Credential checkers: C{twisted.cred} L{ICredentialsChecker}s that verify
usernames and passwords against an organisation's user store.
"""
