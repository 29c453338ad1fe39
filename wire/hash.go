package wire

// FNV-1a 64-bit parameters (SPEC.md "Token name to shard").
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211

	// DefaultShardCount is the shard count a cluster is bootstrapped with
	// unless configured otherwise. The real count comes in SESSION_OPEN and
	// MAP replies.
	DefaultShardCount = 4096
)

// Hash returns the 64-bit FNV-1a hash of a token name.
func Hash(name []byte) uint64 {
	h := uint64(fnvOffset)
	for _, c := range name {
		h ^= uint64(c)
		h *= fnvPrime
	}
	return h
}

// Shard returns the shard a token name belongs to: Hash(name) mod
// shardCount. shardCount must be at least 1; for 0 Shard returns 0.
func Shard(name []byte, shardCount uint32) uint32 {
	if shardCount == 0 {
		return 0
	}
	return uint32(Hash(name) % uint64(shardCount))
}
