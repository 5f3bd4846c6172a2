"""The command-line tools: blocklayer-img, blocklayer-io, blocklayer-nbd, blocklayer-storage-daemon."""
