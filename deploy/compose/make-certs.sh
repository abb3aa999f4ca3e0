#!/bin/sh
# Certificates for gRPC over TLS in compose.yaml, made with openssl (3.0 or
# newer) into ./certs (or the folder given as the first argument):
#
#   ca.crt, ca.key    a CA of your own; made once, kept on later runs
#   tls.crt, tls.key  one certificate for the three services, signed by it,
#                     naming customers, interactions and loyalty (how they
#                     call each other), localhost and 127.0.0.1 (the health
#                     checks, grpcurl on this host); for serving and, with
#                     mutual TLS, for calling (serverAuth and clientAuth)
#
# Run it again to renew tls.crt with the same CA, then restart the services
# (docker compose restart customers interactions loyalty): they read the
# files at start. TLS_NAMES replaces the names (add the host name
# clients use), TLS_DAYS the validity (default 825 days).
set -eu

dir=${1:-$(dirname "$0")/certs}
names=${TLS_NAMES:-DNS:customers,DNS:interactions,DNS:loyalty,DNS:localhost,IP:127.0.0.1}
days=${TLS_DAYS:-825}
mkdir -p "$dir"
cd "$dir"

if [ ! -f ca.key ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=open-crm gRPC CA" -keyout ca.key -out ca.crt
    chmod 600 ca.key
fi
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=open-crm" \
    -addext "subjectAltName=$names" -addext "extendedKeyUsage=serverAuth,clientAuth" \
    -keyout tls.key -out tls.csr
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -copy_extensions copy -out tls.crt
rm -f tls.csr
# The services run as uid 10001 and must read the key. On a shared host give
# it to that user instead: chown 10001 tls.key && chmod 600 tls.key
chmod 644 tls.key
echo "made $dir/tls.crt for $names, signed by $dir/ca.crt"
