"""Notifications: signed webhooks (JSON) and Slack messages about approvals and refusals.

``settings`` parses ``[[notify]]`` blocks, ``messages`` turns a recorded event into a
notification and its body, ``delivery`` posts them from a bounded queue with retries,
never in the way of an operation.
"""
