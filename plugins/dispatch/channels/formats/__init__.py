"""What each channel puts on the wire: MIME e-mails, letter PDFs, manifests, postal addresses, SMS text."""
