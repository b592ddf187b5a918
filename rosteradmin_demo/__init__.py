"""
The demo and the development servers: a local Prosody, a sample web app
and a chat page, around rosteradmin (C{python -m rosteradmin_demo.demo}).
They run from a checkout and are not installed with rosteradmin: nothing in
the service imports them.
"""
