"""The kopf operator: Organization, ScanJob and RetentionPolicy handlers. Not built yet: see issue 4."""
