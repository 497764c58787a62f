"""The models: specs, input schemas, validation and prices."""
