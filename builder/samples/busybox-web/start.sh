#!/bin/sh
set -e
mkdir -p /tmp/www
cp -r /app/www/. /tmp/www/
echo "$GREETING" > /tmp/www/greeting.txt
exec httpd -f -p "8080" -h /tmp/www
