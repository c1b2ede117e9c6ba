import requests
import json
import time

API_URL = "http://localhost:8095/api/v1"
API_KEY = "demo-api-key-2024"

# Submit a cache job
def create_cache_job(files=None, directories=None):
    headers = {
        "X-API-Key": API_KEY,
        "Content-Type": "application/json"
    }
    
    data = {}
    if files:
        data["files"] = files
    if directories:
        data["directories"] = directories
    
    response = requests.post(
        f"{API_URL}/cache/jobs",
        headers=headers,
        json=data
    )
    return response.json()

# Monitor job progress
def get_job_progress(job_id):
    headers = {"X-API-Key": API_KEY}
    response = requests.get(
        f"{API_URL}/cache/jobs/{job_id}",
        headers=headers
    )
    return response.json()

# Example usage
job = create_cache_job(directories=["00_Media/Farm"])
print(f"Created job: {job['jobId']}")
print(f"Total size: {job['totalSize']['readable']}")

# Poll for progress
while True:
    status = get_job_progress(job['jobId'])
    progress = status['job']['progress']
    
    print(f"Progress: {progress['size']['completedReadable']} / {progress['size']['totalReadable']}")
    
    if status['job']['throughput']:
        print(f"Speed: {status['job']['throughput']['readable']}")
    
    if status['job']['status'] in ['completed', 'failed', 'cancelled']:
        break
    
    time.sleep(5)
