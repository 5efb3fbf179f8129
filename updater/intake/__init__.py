"""The correction intake: a chat correction becomes a candidate fact (LangChain), checked by the trust policy."""
