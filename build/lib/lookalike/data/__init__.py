"""Reading, validating and encoding the publisher table and the advertiser's seed."""
