"""Push notifications: a finished request reaches its caller's phones (FCM, APNs) and browsers (Web Push).

Pushes ride the client-webhook outbox (app/relay/outbox.py): `queue.py` turns a completion into one
delivery per device (deterministic ids, so exactly once per device and completion), and the outbox
hands each attempt of a `push:` delivery to `dispatch.py`, which picks the device's sender.
"""
