"""The asyncio side of the SIP stack: transports, effect runner and UserAgent facade."""
