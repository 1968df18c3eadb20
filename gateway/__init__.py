"""Secure file-drop gateway for international criminal-records exchange."""
