"""The names of the PostgreSQL protocol's message types, startup codes and
authentication codes (protocol 3.0, PostgreSQL's "Message Formats").

One byte names a message; the same byte means different messages in the two
directions (``D`` is Describe from a client, DataRow from a server), so each
direction has its own names.
"""
from __future__ import annotations

# --- startup packets (no type byte) ------------------------------------------
PROTOCOL_30 = 196608
PROTOCOL_32 = 196610  # PostgreSQL 18 libpq; answered with NegotiateProtocolVersion
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

# --- from a client (frontend messages) ---------------------------------------
BIND = b"B"
CLOSE = b"C"
COPY_DATA = b"d"
COPY_DONE = b"c"
COPY_FAIL = b"f"
DESCRIBE = b"D"
EXECUTE = b"E"
FLUSH = b"H"
FUNCTION_CALL = b"F"
PARSE = b"P"
PASSWORD = b"p"  # also SASLInitialResponse and SASLResponse
QUERY = b"Q"
SYNC = b"S"
TERMINATE = b"X"

# Describe and Close name a prepared statement or a portal.
STATEMENT = b"S"
PORTAL = b"P"

# --- from a server (backend messages) ----------------------------------------
AUTHENTICATION = b"R"
BACKEND_KEY_DATA = b"K"
BIND_COMPLETE = b"2"
CLOSE_COMPLETE = b"3"
COMMAND_COMPLETE = b"C"
COPY_IN_RESPONSE = b"G"
COPY_OUT_RESPONSE = b"H"
COPY_BOTH_RESPONSE = b"W"
DATA_ROW = b"D"
EMPTY_QUERY_RESPONSE = b"I"
ERROR_RESPONSE = b"E"
NEGOTIATE_PROTOCOL_VERSION = b"v"
NO_DATA = b"n"
NOTICE_RESPONSE = b"N"
NOTIFICATION_RESPONSE = b"A"
PARAMETER_DESCRIPTION = b"t"
PARAMETER_STATUS = b"S"
PARSE_COMPLETE = b"1"
PORTAL_SUSPENDED = b"s"
READY_FOR_QUERY = b"Z"
ROW_DESCRIPTION = b"T"

# Messages a server may send at any time, outside any reply.
ASYNC = frozenset({NOTICE_RESPONSE, NOTIFICATION_RESPONSE, PARAMETER_STATUS})

# --- Authentication request codes --------------------------------------------
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

# --- transaction status in ReadyForQuery -------------------------------------
IDLE = b"I"
IN_TRANSACTION = b"T"
IN_FAILED_TRANSACTION = b"E"
