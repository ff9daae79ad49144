"""What happened after "sent": the providers' signed delivery events (issue 13).

Each provider module (:mod:`.sendgrid`, :mod:`.twilio`, :mod:`.printapi`) checks a request's
signature with the provider's own scheme and turns its body into :class:`.event.DeliveryEvent`
values, the one shape every provider's events take here. :mod:`.receive` stores a request's
events in one statement, matches them to actions through the provider message id the send
recorded, and applies the consequences (:mod:`.consequences`) once each.
"""
