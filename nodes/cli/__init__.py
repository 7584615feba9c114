"""The command lines: bin/mesh (mesh, channel_cli, reshard_cli, top) and bin/chat (chat, chatroom,
chatmedia, chatsession, outcome); common and preflight serve both."""
