"""The ML backend server: Flask app, scoring queue, background sync with Label Studio."""
