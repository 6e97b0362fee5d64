package main

// The LINSTOR stand-in's placement rules, as pure functions over a snapshot of the satellites.
// They follow linstor-csi (github.com/piraeusdatastore/linstor-csi): pkg/volume/parameter.go for
// the StorageClass parameters, pkg/volume/remoteaccess.go for allowRemoteVolumeAccess, the
// AutoPlaceTopology scheduler (the default placementPolicy) for where replicas go, and
// GenericAccessibleTopologies for the topology the PV is pinned to.

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

const (
	linstorDriver = "linstor.csi.linbit.com"
	// LinstorNodeKey is the topology key the LINSTOR node plugin reports (pkg/topology).
	linstorNodeKey = "linbit.com/hostname"
	// The prefix of the per-pool topology labels the node plugin reports (labelBySP).
	linstorPoolKeyPrefix = "linbit.com/sp-"
)

// Satellite is a LINSTOR node as the stand-in sees it: built from a Kubernetes Node of the fleet.
type Satellite struct {
	Name   string
	Online bool
	// Aux properties: the node labels the Piraeus operator copies onto the LINSTOR node
	// (Aux/topology.kubernetes.io/zone, .../region), without the "Aux/" prefix.
	Aux map[string]string
	// Storage pools and their total size in bytes.
	Pools map[string]int64
}

// Replica is one diskful copy of a volume.
type Replica struct {
	Node  string `json:"node"`
	Pool  string `json:"pool"`
	Bytes int64  `json:"bytes"`
}

// RemoteAccessRule is one entry of an allowRemoteVolumeAccess list.
type RemoteAccessRule struct {
	FromSame []string `json:"fromSame,omitempty"`
}

// RemoteAccessPolicy: "true" = [{}] (any node), "false" = [{fromSame: [linbit.com/hostname]}].
type RemoteAccessPolicy []RemoteAccessRule

var (
	remoteAccessAnywhere  = RemoteAccessPolicy{{}}
	remoteAccessLocalOnly = RemoteAccessPolicy{{FromSame: []string{linstorNodeKey}}}
)

// Params are the StorageClass parameters that decide placement.
type Params struct {
	PlacementCount      int
	StoragePools        []string // empty: any pool of the node
	RemoteAccess        RemoteAccessPolicy
	ReplicasOnSame      []string // Aux property names
	ReplicasOnDifferent []string
	NodeList            []string // manual placement: diskful on exactly these nodes
	LayerList           []string
}

// The parameter names linstor-csi knows (pkg/volume/parameter.go), lower-cased as it matches them.
var knownParams = map[string]bool{
	"allowremotevolumeaccess": true, "autoplace": true, "clientlist": true, "disklessonremaining": true,
	"disklessstoragepool": true, "donotplacewithregex": true, "encryption": true, "fsopts": true,
	"layerlist": true, "mountopts": true, "nodelist": true, "placementcount": true, "placementpolicy": true,
	"replicasondifferent": true, "replicasonsame": true, "sizekib": true, "storagepool": true,
	"postmountxfsopts": true, "resourcegroup": true, "usepvcname": true,
}

var knownLayers = []string{"drbd", "storage", "luks", "nvme", "cache", "writecache", "openflex", "exos"}

// ParseParams reads StorageClass parameters as linstor-csi does: keys in the driver's namespace
// (or none) must be known, other namespaces are ignored; the default is one replica, layers
// "drbd storage", remote access from anywhere, the AutoPlaceTopology policy.
func ParseParams(raw map[string]string) (Params, error) {
	p := Params{PlacementCount: 1, RemoteAccess: remoteAccessAnywhere, LayerList: []string{"drbd", "storage"}}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		value := raw[key]
		namespace, name := "", key
		if i := strings.Index(key, "/"); i >= 0 {
			namespace, name = key[:i], key[i+1:]
		}
		if namespace != "" && namespace != linstorDriver {
			continue // DrbdOptions/..., property.linstor.csi.linbit.com/..., csi.storage.k8s.io/...
		}
		name = strings.ToLower(name)
		if !knownParams[name] {
			return p, fmt.Errorf("invalid parameter: %s does not belong to paramKey values", name)
		}
		switch name {
		case "placementcount", "autoplace":
			if value == "" {
				value = "1"
			}
			count, err := strconv.ParseInt(value, 10, 32)
			if err != nil {
				return p, fmt.Errorf("bad parameters: unable to parse %q as a 32 bit integer", value)
			}
			p.PlacementCount = int(count)
		case "storagepool":
			p.StoragePools = strings.Fields(value)
		case "allowremotevolumeaccess":
			policy, err := ParseRemoteAccess(value)
			if err != nil {
				return p, err
			}
			p.RemoteAccess = policy
		case "replicasonsame":
			p.ReplicasOnSame = auxNames(value)
		case "replicasondifferent":
			p.ReplicasOnDifferent = auxNames(value)
		case "nodelist":
			p.NodeList = strings.Split(value, " ")
		case "layerlist":
			layers, err := parseLayers(value)
			if err != nil {
				return p, err
			}
			p.LayerList = layers
		case "placementpolicy":
			if !strings.EqualFold(value, "AutoPlaceTopology") && !strings.EqualFold(value, "AutoPlace") && !strings.EqualFold(value, "Manual") {
				return p, fmt.Errorf("placementPolicy %q is not simulated by the rehearsal stand-in (AutoPlaceTopology, AutoPlace and Manual are)", value)
			}
		case "encryption", "disklessonremaining", "usepvcname":
			if _, err := strconv.ParseBool(value); err != nil {
				return p, err
			}
		}
	}
	if len(p.NodeList) > 0 {
		p.PlacementCount = len(p.NodeList)
		p.ReplicasOnSame, p.ReplicasOnDifferent = nil, nil
	}
	return p, nil
}

// ParseRemoteAccess: a boolean (legacy values) or a YAML list of {fromSame: [...]} rules.
func ParseRemoteAccess(text string) (RemoteAccessPolicy, error) {
	if b, err := strconv.ParseBool(text); err == nil {
		if b {
			return remoteAccessAnywhere, nil
		}
		return remoteAccessLocalOnly, nil
	}
	var rules []RemoteAccessRule
	if err := yaml.UnmarshalStrict([]byte(text), &rules); err != nil {
		return nil, fmt.Errorf("allowRemoteVolumeAccess: %w", err)
	}
	return RemoteAccessPolicy(rules), nil
}

// Replica-placement properties name Aux properties; linstor-csi adds the "Aux/" prefix itself.
func auxNames(value string) []string {
	var names []string
	for _, name := range strings.Fields(value) {
		names = append(names, strings.TrimPrefix(name, "Aux/"))
	}
	return names
}

func parseLayers(value string) ([]string, error) {
	var layers []string
	for _, layer := range strings.Split(value, " ") {
		found := false
		for _, known := range knownLayers {
			if strings.EqualFold(layer, known) {
				layers = append(layers, known)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown layer type %s, known layer types %v", layer, knownLayers)
		}
	}
	return layers, nil
}

// AccessibleSegments applies the policy to one node's segments (remoteaccess.go).
func (r RemoteAccessPolicy) AccessibleSegments(segments map[string]string) []map[string]string {
	var result []map[string]string
	for _, rule := range r {
		m := map[string]string{}
		for _, key := range rule.FromSame {
			if value, ok := segments[key]; ok {
				m[key] = value
			}
		}
		result = append(result, m)
	}
	return prunePattern(result)
}

func subsetOf(a, b map[string]string) bool {
	for k, v := range a {
		if other, ok := b[k]; !ok || other != v {
			return false
		}
	}
	return true
}

// prunePattern drops duplicates and patterns already covered by a broader one.
func prunePattern(sources []map[string]string) []map[string]string {
	sort.SliceStable(sources, func(i, j int) bool { return len(sources[i]) < len(sources[j]) })
	var result []map[string]string
outer:
	for _, source := range sources {
		for _, kept := range result {
			if subsetOf(kept, source) {
				continue outer
			}
		}
		result = append(result, source)
	}
	return result
}

// Segments of a satellite: its Aux properties plus linbit.com/hostname.
func (s Satellite) Segments() map[string]string {
	segments := map[string]string{linstorNodeKey: s.Name}
	for k, v := range s.Aux {
		segments[k] = v
	}
	return segments
}

// AccessibleTopology is where the volume can be used from, one segment map per alternative
// (GenericAccessibleTopologies): nil means everywhere (no PV node affinity).
func AccessibleTopology(policy RemoteAccessPolicy, replicas []Replica, satellites map[string]Satellite) []map[string]string {
	var all []map[string]string
	for _, replica := range replicas {
		segments := satellites[replica.Node].Segments()
		segments[linstorNodeKey] = replica.Node
		for _, m := range policy.AccessibleSegments(segments) {
			if len(m) == 0 {
				return nil // access from everywhere
			}
			all = append(all, m)
		}
	}
	return prunePattern(all)
}

// Usage is what the existing volumes take from each pool: node -> pool -> bytes.
type Usage map[string]map[string]int64

func (u Usage) Add(replicas []Replica, sign int64) {
	for _, r := range replicas {
		if u[r.Node] == nil {
			u[r.Node] = map[string]int64{}
		}
		u[r.Node][r.Pool] += sign * r.Bytes
	}
}

// Free bytes of a pool on a satellite.
func (u Usage) Free(s Satellite, pool string) int64 {
	return s.Pools[pool] - u[s.Name][pool]
}

// bestPool: the allowed pool with the most free space on the satellite ("" if none), and that space.
func bestPool(s Satellite, pools []string, usage Usage) (string, int64) {
	names := pools
	if len(names) == 0 {
		for name := range s.Pools {
			names = append(names, name)
		}
		sort.Strings(names)
	}
	best, bestFree := "", int64(-1)
	for _, name := range names {
		if _, ok := s.Pools[name]; !ok {
			continue
		}
		if free := usage.Free(s, name); free > bestFree {
			best, bestFree = name, free
		}
	}
	return best, bestFree
}

// PlacementError is a refusal the driver would report; Reschedule asks the scheduler for
// another node (external-provisioner does so for ResourceExhausted on a selected node).
type PlacementError struct {
	Message    string
	Reschedule bool
}

func (e *PlacementError) Error() string { return e.Message }

// unusable says why a satellite cannot take a replica of size bytes ("" if it can).
func unusable(s Satellite, p Params, bytes int64, usage Usage) string {
	if !s.Online {
		return "satellite offline (node not Ready)"
	}
	if len(s.Pools) == 0 {
		return "no storage pool (diskless node)"
	}
	pool, free := bestPool(s, p.StoragePools, usage)
	if pool == "" {
		return fmt.Sprintf("no storage pool named %s", strings.Join(p.StoragePools, " or "))
	}
	if free < bytes {
		return fmt.Sprintf("storage pool %s has %s free, the volume needs %s", pool, humanBytes(free), humanBytes(bytes))
	}
	return ""
}

// fitsConstraints: replicasOnSame / replicasOnDifferent against the replicas already chosen.
func fitsConstraints(s Satellite, p Params, chosen []Satellite) bool {
	for _, key := range p.ReplicasOnSame {
		value, ok := s.Aux[key]
		if !ok {
			return false
		}
		for _, c := range chosen {
			if c.Aux[key] != value {
				return false
			}
		}
	}
	for _, key := range p.ReplicasOnDifferent {
		value, ok := s.Aux[key]
		if !ok {
			return false
		}
		for _, c := range chosen {
			if c.Aux[key] == value {
				return false
			}
		}
	}
	return true
}

// Place chooses the diskful replicas of a new volume: the selected node first (WaitForFirstConsumer),
// the rest by LINSTOR's autoplacer (nodes online with room in an allowed pool, honouring
// replicasOnSame/replicasOnDifferent, most free space first).
func Place(p Params, bytes int64, selected string, satellites map[string]Satellite, usage Usage) ([]Replica, error) {
	if p.PlacementCount < 1 {
		return nil, &PlacementError{Message: fmt.Sprintf("placementCount %d: at least one replica is needed", p.PlacementCount)}
	}
	var chosen []Satellite
	var replicas []Replica
	take := func(s Satellite) {
		pool, _ := bestPool(s, p.StoragePools, usage)
		chosen = append(chosen, s)
		replicas = append(replicas, Replica{Node: s.Name, Pool: pool, Bytes: bytes})
	}
	if len(p.NodeList) > 0 {
		for _, name := range p.NodeList {
			s, ok := satellites[name]
			if !ok {
				return nil, &PlacementError{Message: fmt.Sprintf("nodeList: %s is not a LINSTOR node", name)}
			}
			if why := unusable(s, p, bytes, usage); why != "" {
				return nil, &PlacementError{Message: fmt.Sprintf("nodeList: node %s: %s", name, why)}
			}
			take(s)
		}
		return replicas, nil
	}
	if selected != "" {
		s, ok := satellites[selected]
		if !ok {
			return nil, &PlacementError{Message: fmt.Sprintf("selected node %s is not a LINSTOR node", selected), Reschedule: true}
		}
		if why := unusable(s, p, bytes, usage); why != "" {
			return nil, &PlacementError{
				Message:    fmt.Sprintf("failed to place a replica on the selected node %s: %s", selected, why),
				Reschedule: true,
			}
		}
		take(s)
	}
	// The autoplacer's candidates, most free space first (LINSTOR's default MaxFreeSpace weight).
	var candidates []Satellite
	skipped := map[string]string{}
	for _, s := range sortedSatellites(satellites) {
		if s.Name == selected {
			continue
		}
		if why := unusable(s, p, bytes, usage); why != "" {
			skipped[s.Name] = why
			continue
		}
		candidates = append(candidates, s)
	}
	sort.SliceStable(candidates, func(i, j int) bool {
		_, fi := bestPool(candidates[i], p.StoragePools, usage)
		_, fj := bestPool(candidates[j], p.StoragePools, usage)
		return fi > fj
	})
	for len(replicas) < p.PlacementCount {
		placed := false
		for _, s := range candidates {
			if containsNode(chosen, s.Name) || !fitsConstraints(s, p, chosen) {
				continue
			}
			take(s)
			placed = true
			break
		}
		if !placed {
			return nil, &PlacementError{Message: notEnoughNodes(p, len(replicas), skipped)}
		}
	}
	return replicas, nil
}

func notEnoughNodes(p Params, placed int, skipped map[string]string) string {
	msg := fmt.Sprintf("Not enough available nodes: placementCount %d, placed %d", p.PlacementCount, placed)
	if len(p.ReplicasOnSame)+len(p.ReplicasOnDifferent) > 0 {
		msg += fmt.Sprintf(" (replicasOnSame %v, replicasOnDifferent %v)", p.ReplicasOnSame, p.ReplicasOnDifferent)
	}
	if len(skipped) > 0 {
		names := make([]string, 0, len(skipped))
		for name := range skipped {
			names = append(names, name)
		}
		sort.Strings(names)
		var parts []string
		for _, name := range names {
			parts = append(parts, name+": "+skipped[name])
		}
		msg += "; skipped " + strings.Join(parts, "; ")
	}
	return msg
}

func containsNode(list []Satellite, name string) bool {
	for _, s := range list {
		if s.Name == name {
			return true
		}
	}
	return false
}

func sortedSatellites(satellites map[string]Satellite) []Satellite {
	list := make([]Satellite, 0, len(satellites))
	for _, s := range satellites {
		list = append(list, s)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	return list
}

func humanBytes(b int64) string {
	const gi = 1 << 30
	if b%gi == 0 || b >= 10*gi {
		return fmt.Sprintf("%dGi", b/gi)
	}
	return fmt.Sprintf("%dMi", b>>20)
}

// replicasAnnotation lists a volume's replicas on its PV (what `linstor resource list` would show).
const replicasAnnotation = "rehearsal.mlcache.dev/linstor-replicas"

func encodeReplicas(replicas []Replica) string {
	out, _ := json.Marshal(replicas)
	return string(out)
}

func decodeReplicas(text string) ([]Replica, error) {
	var replicas []Replica
	err := json.Unmarshal([]byte(text), &replicas)
	return replicas, err
}
