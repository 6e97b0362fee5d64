package main

import (
	"reflect"
	"strings"
	"testing"
)

const gi = int64(1) << 30

func fleet() map[string]Satellite {
	zone := func(z string) map[string]string { return map[string]string{zoneLabel: z} }
	return map[string]Satellite{
		"ucsd-a":  {Name: "ucsd-a", Online: true, Aux: zone("ucsd"), Pools: map[string]int64{"lvm-thin": 2000 * gi}},
		"ucsd-b":  {Name: "ucsd-b", Online: true, Aux: zone("ucsd"), Pools: map[string]int64{"lvm-thin": 3000 * gi}},
		"ucsd-s":  {Name: "ucsd-s", Online: true, Aux: zone("ucsd"), Pools: map[string]int64{"lvm-thin": 200 * gi}},
		"sdsu-a":  {Name: "sdsu-a", Online: true, Aux: zone("sdsu"), Pools: map[string]int64{"lvm-thin": 4000 * gi}},
		"sdsu-x":  {Name: "sdsu-x", Online: false, Aux: zone("sdsu"), Pools: map[string]int64{"lvm-thin": 9000 * gi}},
		"chico-c": {Name: "chico-c", Online: true, Aux: zone("chico"), Pools: map[string]int64{}},
	}
}

func nodes(replicas []Replica) []string {
	var names []string
	for _, r := range replicas {
		names = append(names, r.Node)
	}
	return names
}

func TestSelectedNodeFirstThenMostFreeSpace(t *testing.T) {
	p, _ := ParseParams(map[string]string{"linstor.csi.linbit.com/placementCount": "2"})
	got, err := Place(p, 500*gi, "ucsd-a", fleet(), Usage{})
	if err != nil {
		t.Fatal(err)
	}
	// sdsu-x has more space but is offline; sdsu-a has the most free space of the rest.
	if want := []string{"ucsd-a", "sdsu-a"}; !reflect.DeepEqual(nodes(got), want) {
		t.Fatalf("replicas on %v, want %v", nodes(got), want)
	}
}

func TestReplicasOnSameKeepsTheZone(t *testing.T) {
	p, _ := ParseParams(map[string]string{
		"linstor.csi.linbit.com/placementCount": "2",
		"linstor.csi.linbit.com/replicasOnSame": "topology.kubernetes.io/zone",
	})
	got, err := Place(p, 500*gi, "ucsd-a", fleet(), Usage{})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"ucsd-a", "ucsd-b"}; !reflect.DeepEqual(nodes(got), want) {
		t.Fatalf("replicas on %v, want %v", nodes(got), want)
	}
}

func TestReplicasOnDifferentSpreadsZones(t *testing.T) {
	p, _ := ParseParams(map[string]string{
		"linstor.csi.linbit.com/placementCount":      "2",
		"linstor.csi.linbit.com/replicasOnDifferent": "Aux/topology.kubernetes.io/zone",
	})
	got, err := Place(p, 100*gi, "ucsd-b", fleet(), Usage{})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"ucsd-b", "sdsu-a"}; !reflect.DeepEqual(nodes(got), want) {
		t.Fatalf("replicas on %v, want %v", nodes(got), want)
	}
}

func TestTooSmallSelectedNodeAsksForAnotherNode(t *testing.T) {
	p, _ := ParseParams(nil)
	_, err := Place(p, 500*gi, "ucsd-s", fleet(), Usage{})
	pe, ok := err.(*PlacementError)
	if !ok || !pe.Reschedule || !strings.Contains(pe.Message, "storage pool lvm-thin has 200Gi free, the volume needs 500Gi") {
		t.Fatalf("got %v", err)
	}
}

func TestUsageCountsAgainstThePool(t *testing.T) {
	p, _ := ParseParams(nil)
	usage := Usage{}
	usage.Add([]Replica{{Node: "ucsd-a", Pool: "lvm-thin", Bytes: 1800 * gi}}, 1)
	if _, err := Place(p, 500*gi, "ucsd-a", fleet(), usage); err == nil {
		t.Fatal("placed on a full pool")
	}
}

func TestNotEnoughNodesNamesTheSkippedOnes(t *testing.T) {
	p, _ := ParseParams(map[string]string{"placementCount": "2"})
	_, err := Place(p, 3500*gi, "sdsu-a", fleet(), Usage{})
	if err == nil || !strings.Contains(err.Error(), "ucsd-s: storage pool lvm-thin has 200Gi free") ||
		!strings.Contains(err.Error(), "sdsu-x: satellite offline") || !strings.Contains(err.Error(), "chico-c: no storage pool") {
		t.Fatalf("got %v", err)
	}
}

func TestUnknownParameterIsRefused(t *testing.T) {
	if _, err := ParseParams(map[string]string{"linstor.csi.linbit.com/placementCont": "1"}); err == nil {
		t.Fatal("typo accepted")
	}
	if _, err := ParseParams(map[string]string{"csi.storage.k8s.io/fstype": "xfs", "DrbdOptions/Net/protocol": "C"}); err != nil {
		t.Fatalf("other namespaces must be ignored: %v", err)
	}
}

func TestAccessibleTopology(t *testing.T) {
	sats := fleet()
	two := []Replica{{Node: "ucsd-a"}, {Node: "sdsu-a"}}
	local, _ := ParseRemoteAccess("false")
	want := []map[string]string{{linstorNodeKey: "ucsd-a"}, {linstorNodeKey: "sdsu-a"}}
	if got := AccessibleTopology(local, two, sats); !reflect.DeepEqual(got, want) {
		t.Fatalf("false: %v", got)
	}
	anywhere, _ := ParseRemoteAccess("true")
	if got := AccessibleTopology(anywhere, two, sats); got != nil {
		t.Fatalf("true: %v", got)
	}
	sameZone, err := ParseRemoteAccess("- fromSame: [topology.kubernetes.io/zone]")
	if err != nil {
		t.Fatal(err)
	}
	want = []map[string]string{{zoneLabel: "ucsd"}, {zoneLabel: "sdsu"}}
	if got := AccessibleTopology(sameZone, two, sats); !reflect.DeepEqual(got, want) {
		t.Fatalf("fromSame zone: %v", got)
	}
	// The documented pitfall: a node without the label makes the rule allow any node.
	sats["ucsd-a"] = Satellite{Name: "ucsd-a", Online: true}
	if got := AccessibleTopology(sameZone, two, sats); got != nil {
		t.Fatalf("fromSame zone on an unlabelled node: %v", got)
	}
}
