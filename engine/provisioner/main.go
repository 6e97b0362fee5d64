// mlcache-provisioner: the rehearsal cluster's storage, two stand-ins in one process built on
// sigs.k8s.io/sig-storage-lib-external-provisioner (the library real external provisioners use):
//
//   - linstor.csi.linbit.com: LINSTOR's placement and topology (see linstor.go), capacity from the
//     storage pools each fleet node declares, published as CSIStorageCapacity objects the way
//     csi-provisioner --enable-capacity does, so the scheduler skips nodes that are too small;
//   - rook-ceph.rbd.csi.ceph.com: network storage, provisioned at once, no node affinity.
//
// No data path exists: a PV is an API object, nothing is attached or mounted.
package main

import (
	"context"
	"flag"
	"fmt"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

const (
	rookDriver = "rook-ceph.rbd.csi.ceph.com"
	// The fleet's storage pools of a node, "name=size[,name=size]" (written by tools.fleet).
	poolsAnnotation = "rehearsal.mlcache.dev/linstor-storage-pools"
	zoneLabel       = "topology.kubernetes.io/zone"
	regionLabel     = "topology.kubernetes.io/region"
	fsTypeParam     = "csi.storage.k8s.io/fstype"
	defaultFSType   = "ext4" // csi-provisioner --default-fstype=ext4, as Piraeus deploys it
)

type provisioner struct {
	client kubernetes.Interface
	nodes  listersv1.NodeLister
	mu     sync.Mutex
	// The replicas of every LINSTOR volume, by PV name: the stand-in's "linstor resource list".
	ledger   map[string][]Replica
	capacity *capacityPublisher
}

func main() {
	klog.InitFlags(nil)
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster")
	namespace := flag.String("capacity-namespace", "kube-system", "namespace of the CSIStorageCapacity objects")
	flag.Parse()

	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Fatalf("kubeconfig: %v", err)
	}
	config.QPS, config.Burst = 50, 100
	client := kubernetes.NewForConfigOrDie(config)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	factory := informers.NewSharedInformerFactory(client, 0)
	nodeInformer := factory.Core().V1().Nodes()
	pvInformer := factory.Core().V1().PersistentVolumes()
	classInformer := factory.Storage().V1().StorageClasses()
	p := &provisioner{client: client, nodes: nodeInformer.Lister(), ledger: map[string][]Replica{}}
	p.capacity = newCapacityPublisher(client, *namespace, p, classInformer.Lister())
	trigger := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { p.capacity.Trigger() },
		UpdateFunc: func(any, any) { p.capacity.Trigger() },
		DeleteFunc: func(any) { p.capacity.Trigger() },
	}
	_, _ = nodeInformer.Informer().AddEventHandler(trigger)
	_, _ = classInformer.Informer().AddEventHandler(trigger)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	p.loadLedger(pvInformer.Lister())

	go p.capacity.Run(ctx)
	pc := controller.NewProvisionController(ctx, client, linstorDriver, p,
		controller.AdditionalProvisionerNames([]string{rookDriver}),
		controller.LeaderElection(false),
		controller.AddFinalizer(true),
		controller.MetricsPort(0),
		controller.FailedProvisionThreshold(0),
		controller.RetryIntervalMax(10*time.Second),
	)
	klog.Infof("serving %s and %s", linstorDriver, rookDriver)
	pc.Run(ctx)
}

// loadLedger rebuilds the replica ledger from the PVs this process made before a restart.
func (p *provisioner) loadLedger(pvs listersv1.PersistentVolumeLister) {
	list, err := pvs.List(labels.Everything())
	if err != nil {
		klog.Fatalf("list PVs: %v", err)
	}
	for _, pv := range list {
		if text, ok := pv.Annotations[replicasAnnotation]; ok {
			replicas, err := decodeReplicas(text)
			if err != nil {
				klog.Errorf("PV %s: bad %s: %v", pv.Name, replicasAnnotation, err)
				continue
			}
			p.ledger[pv.Name] = replicas
		}
	}
}

// Satellites: every node of the fleet that runs LINSTOR (it declares storage pools, possibly none).
func (p *provisioner) Satellites() map[string]Satellite {
	nodes, err := p.nodes.List(labels.Everything())
	if err != nil {
		klog.Errorf("list nodes: %v", err)
		return nil
	}
	satellites := map[string]Satellite{}
	for _, node := range nodes {
		text, ok := node.Annotations[poolsAnnotation]
		if !ok {
			continue
		}
		pools, err := parsePools(text)
		if err != nil {
			klog.Errorf("node %s: %s: %v", node.Name, poolsAnnotation, err)
			continue
		}
		aux := map[string]string{}
		for _, key := range []string{zoneLabel, regionLabel} {
			if value, ok := node.Labels[key]; ok {
				aux[key] = value
			}
		}
		satellites[node.Name] = Satellite{Name: node.Name, Online: nodeReady(node), Aux: aux, Pools: pools}
	}
	return satellites
}

func (p *provisioner) Usage() Usage {
	p.mu.Lock()
	defer p.mu.Unlock()
	usage := Usage{}
	for _, replicas := range p.ledger {
		usage.Add(replicas, 1)
	}
	return usage
}

func parsePools(text string) (map[string]int64, error) {
	pools := map[string]int64{}
	for _, item := range strings.Split(text, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, size, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not name=size", item)
		}
		quantity, err := resource.ParseQuantity(size)
		if err != nil {
			return nil, fmt.Errorf("pool %s: %v", name, err)
		}
		pools[name] = quantity.Value()
	}
	return pools, nil
}

func nodeReady(node *v1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == v1.NodeReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

func (p *provisioner) SupportsBlock(context.Context) bool { return true }

func (p *provisioner) Provision(ctx context.Context, opts controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	switch opts.StorageClass.Provisioner {
	case linstorDriver:
		return p.provisionLinstor(opts)
	case rookDriver:
		return provisionRook(opts)
	}
	return nil, controller.ProvisioningFinished, &controller.IgnoredError{Reason: "not a driver of this stand-in"}
}

func (p *provisioner) provisionLinstor(opts controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	params, err := ParseParams(opts.StorageClass.Parameters)
	if err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	if hasAccessMode(opts.PVC, v1.ReadWriteMany) && !contains(params.LayerList, "drbd") {
		return nil, controller.ProvisioningFinished, fmt.Errorf("ReadWriteMany needs the DRBD layer, layerList is %q", strings.Join(params.LayerList, " "))
	}
	bytes := requestBytes(opts.PVC)
	p.mu.Lock()
	defer p.mu.Unlock()
	usage := Usage{}
	for _, replicas := range p.ledger {
		usage.Add(replicas, 1)
	}
	satellites := p.Satellites()
	replicas, err := Place(params, bytes, opts.SelectedNodeName, satellites, usage)
	if err != nil {
		if pe, ok := err.(*PlacementError); ok && pe.Reschedule {
			return nil, controller.ProvisioningReschedule, err
		}
		return nil, controller.ProvisioningFinished, err
	}
	pv := basePV(opts, linstorDriver, bytes)
	pv.Annotations = map[string]string{replicasAnnotation: encodeReplicas(replicas)}
	pv.Spec.NodeAffinity = nodeAffinity(AccessibleTopology(params.RemoteAccess, replicas, satellites))
	p.ledger[opts.PVName] = replicas
	klog.Infof("%s: %s on %s", opts.PVName, humanBytes(bytes), describeReplicas(replicas))
	p.capacity.Trigger()
	return pv, controller.ProvisioningFinished, nil
}

func (p *provisioner) Delete(_ context.Context, pv *v1.PersistentVolume) error {
	if pv.Spec.CSI == nil || (pv.Spec.CSI.Driver != linstorDriver && pv.Spec.CSI.Driver != rookDriver) {
		return &controller.IgnoredError{Reason: "not a volume of this stand-in"}
	}
	p.mu.Lock()
	delete(p.ledger, pv.Name)
	p.mu.Unlock()
	p.capacity.Trigger()
	return nil
}

// provisionRook: Ceph RBD is reachable from every node; ceph-csi requires clusterID and pool.
func provisionRook(opts controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	for _, key := range []string{"clusterID", "pool"} {
		if opts.StorageClass.Parameters[key] == "" {
			return nil, controller.ProvisioningFinished, fmt.Errorf("missing required parameter %s", key)
		}
	}
	return basePV(opts, rookDriver, requestBytes(opts.PVC)), controller.ProvisioningFinished, nil
}

func basePV(opts controller.ProvisionOptions, driver string, bytes int64) *v1.PersistentVolume {
	reclaim := v1.PersistentVolumeReclaimDelete
	if opts.StorageClass.ReclaimPolicy != nil {
		reclaim = *opts.StorageClass.ReclaimPolicy
	}
	fsType := ""
	if opts.PVC.Spec.VolumeMode == nil || *opts.PVC.Spec.VolumeMode == v1.PersistentVolumeFilesystem {
		fsType = opts.StorageClass.Parameters[fsTypeParam]
		if fsType == "" {
			fsType = defaultFSType
		}
	}
	return &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: opts.PVName},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: reclaim,
			AccessModes:                   opts.PVC.Spec.AccessModes,
			VolumeMode:                    opts.PVC.Spec.VolumeMode,
			MountOptions:                  opts.StorageClass.MountOptions,
			Capacity:                      v1.ResourceList{v1.ResourceStorage: *resource.NewQuantity(bytes, resource.BinarySI)},
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{
				Driver:       driver,
				VolumeHandle: opts.PVName,
				FSType:       fsType,
			}},
		},
	}
}

// nodeAffinity turns accessible topology into the PV's node affinity, as csi-provisioner does:
// one term per segment map (ORed), one In expression per key.
func nodeAffinity(topology []map[string]string) *v1.VolumeNodeAffinity {
	if len(topology) == 0 {
		return nil
	}
	var terms []v1.NodeSelectorTerm
	for _, segment := range topology {
		keys := make([]string, 0, len(segment))
		for k := range segment {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var term v1.NodeSelectorTerm
		for _, k := range keys {
			term.MatchExpressions = append(term.MatchExpressions,
				v1.NodeSelectorRequirement{Key: k, Operator: v1.NodeSelectorOpIn, Values: []string{segment[k]}})
		}
		terms = append(terms, term)
	}
	return &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{NodeSelectorTerms: terms}}
}

func requestBytes(pvc *v1.PersistentVolumeClaim) int64 {
	q := pvc.Spec.Resources.Requests[v1.ResourceStorage]
	return q.Value()
}

func hasAccessMode(pvc *v1.PersistentVolumeClaim, mode v1.PersistentVolumeAccessMode) bool {
	for _, m := range pvc.Spec.AccessModes {
		if m == mode {
			return true
		}
	}
	return false
}

func contains(list []string, value string) bool {
	for _, v := range list {
		if v == value {
			return true
		}
	}
	return false
}

func describeReplicas(replicas []Replica) string {
	var parts []string
	for _, r := range replicas {
		parts = append(parts, r.Node+"/"+r.Pool)
	}
	return strings.Join(parts, ", ")
}
