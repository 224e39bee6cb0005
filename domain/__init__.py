"""The lowest layer: rules every other layer shares (masking of personal data, the Beijing calendar day).

Imports nothing from `bot`, `dialogs` or `integrations`; pure functions only.
"""
