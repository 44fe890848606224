"""Fakes shared by the unit tests: the consume loop's parts and consumer (`pipeline_parts`)."""
