#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#define N (8u<<20)
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int c,char**v){ int huge=0, keep=c>1&&atoi(v[1]); float*x=0,*y=0;
 for(int r=0;r<12;r++){
  if(!keep||!x){ x=mmap(0,N*4,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); y=mmap(0,N*4,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  } if(huge){madvise(x,N*4,MADV_HUGEPAGE);madvise(y,N*4,MADV_HUGEPAGE);}
  for(size_t i=0;i<N;i++){x[i]=i;y[i]=0;}
  double t[15]; for(int k=0;k<15;k++){double t0=now(); for(size_t i=0;i<N;i++) y[i]=x[i]*1.5f+0.25f; t[k]=now()-t0;}
  qsort(t,15,sizeof(double),cmp); printf("mapping %2d: median %.3f ms (min %.3f max %.3f)  %.1f GB/s\n",r,t[7]*1e3,t[0]*1e3,t[14]*1e3,2.0*N*4/t[7]/1e9);
  if(!keep){munmap(x,N*4); munmap(y,N*4); x=0;}} }
