module mlcache.local/langhost

go 1.26
