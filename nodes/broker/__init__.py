"""The broker node: client sessions over ZeroMQ, WebSocket and HTTP; limits; forwarding to logic and delivery."""
